package portal.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.config.util.ResourceCountCacheUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.DaoRegistryResourceSupportedSvc;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.jpa.topic.SubscriptionTopicConfig;
import ca.uhn.fhir.jpa.util.ResourceCountCache;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.rest.api.IResourceSupportedSvc;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManagerFactory;
import java.util.HashMap;
import java.util.Map;
import javax.sql.DataSource;
import org.hibernate.cfg.AvailableSettings;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.SpringBootConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.DispatcherServletAutoConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.ServletWebServerFactoryAutoConfiguration;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

/**
 * A HAPI FHIR JPA server for the interop tests: FHIR R4 at /fhir, H2 in memory, rest-hook
 * Subscriptions, and R4 topic-based (backport) Subscriptions, which HAPI only wires when
 * SubscriptionTopicConfig is imported. Port: -Dserver.port (0 = any free port).
 *
 * Only the auto-configurations a servlet container needs are used (no component scan, no
 * Spring Data): every other bean comes from HAPI's own configuration classes or from here.
 */
@SpringBootConfiguration
@EnableTransactionManagement
@Import({
  ServletWebServerFactoryAutoConfiguration.class,
  DispatcherServletAutoConfiguration.class,
  ThreadPoolFactoryConfig.class,
  JpaR4Config.class,
  JpaBatch2Config.class,
  Batch2JobsConfig.class,
  SubscriptionSubmitterConfig.class,
  SubscriptionProcessorConfig.class,
  SubscriptionChannelConfig.class,
  SubscriptionTopicConfig.class
})
public class HapiServer {

  public static void main(String[] args) {
    SpringApplication application = new SpringApplication(HapiServer.class);
    // HAPI's configuration classes refer to each other (as HAPI's own starter allows).
    application.setAllowCircularReferences(true);
    application.setAllowBeanDefinitionOverriding(true);
    application.run(args);
  }

  @Bean
  public DataSource dataSource() {
    HikariDataSource dataSource = new HikariDataSource();
    // A private in-memory database per JVM; DB_CLOSE_DELAY keeps it while the pool cycles.
    dataSource.setJdbcUrl("jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1");
    dataSource.setUsername("sa");
    dataSource.setPassword("");
    dataSource.setMaximumPoolSize(20);
    return dataSource;
  }

  @Bean
  public JpaStorageSettings storageSettings() {
    JpaStorageSettings settings = new JpaStorageSettings();
    // Like most EHRs: references must resolve, client-assigned ids are allowed.
    settings.setAllowExternalReferences(true);
    settings.setAutoCreatePlaceholderReferenceTargets(false);
    settings.setDeleteEnabled(true);
    settings.setExpungeEnabled(true);
    return settings;
  }

  @Bean
  public SubscriptionSettings subscriptionSettings() {
    SubscriptionSettings settings = new SubscriptionSettings();
    settings.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
    return settings;
  }

  @Bean
  public PartitionSettings partitionSettings() {
    return new PartitionSettings();
  }

  @Bean
  public IEmailSender emailSender() {
    // Email Subscriptions are not offered; HAPI's delivery factory still wants a sender.
    return theDetails -> {
      throw new UnsupportedOperationException("email subscriptions are off");
    };
  }

  @Primary
  @Bean
  public LocalContainerEntityManagerFactoryBean entityManagerFactory(
      ConfigurableListableBeanFactory beanFactory,
      FhirContext fhirContext,
      JpaStorageSettings storageSettings,
      DataSource dataSource) {
    LocalContainerEntityManagerFactoryBean factory =
        HapiEntityManagerFactoryUtil.newEntityManagerFactory(
            beanFactory, fhirContext, storageSettings);
    Map<String, Object> properties = new HashMap<>();
    properties.put(AvailableSettings.DIALECT, HapiFhirH2Dialect.class.getName());
    properties.put(AvailableSettings.HBM2DDL_AUTO, "update");
    properties.put(AvailableSettings.SHOW_SQL, "false");
    properties.put(AvailableSettings.USE_SECOND_LEVEL_CACHE, "false");
    properties.put(AvailableSettings.USE_QUERY_CACHE, "false");
    properties.put(AvailableSettings.STATEMENT_BATCH_SIZE, "20");
    properties.put("hibernate.search.enabled", "false");
    factory.setPersistenceUnitName("HAPI_PU");
    factory.setJpaPropertyMap(properties);
    factory.setDataSource(dataSource);
    return factory;
  }

  @Primary
  @Bean
  public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
    JpaTransactionManager manager = new JpaTransactionManager();
    manager.setEntityManagerFactory(entityManagerFactory);
    return manager;
  }

  @Bean
  public DatabaseBackedPagingProvider databaseBackedPagingProvider() {
    DatabaseBackedPagingProvider paging = new DatabaseBackedPagingProvider();
    paging.setDefaultPageSize(20);
    paging.setMaximumPageSize(500);
    return paging;
  }

  @Bean
  public IResourceSupportedSvc resourceSupportedSvc(DaoRegistry daoRegistry) {
    return new DaoRegistryResourceSupportedSvc(daoRegistry);
  }

  @Bean(name = "myResourceCountsCache")
  public ResourceCountCache resourceCountsCache(IFhirSystemDao<?, ?> systemDao) {
    return ResourceCountCacheUtil.newResourceCountCache(systemDao);
  }

  @Bean
  public RestfulServer restfulServer(
      IFhirSystemDao<?, ?> systemDao,
      ResourceProviderFactory resourceProviders,
      IJpaSystemProvider systemProvider,
      JpaStorageSettings storageSettings,
      ISearchParamRegistry searchParamRegistry,
      IValidationSupport validationSupport,
      DatabaseBackedPagingProvider paging) {
    RestfulServer server = new RestfulServer(systemDao.getContext());
    server.registerProviders(resourceProviders.createProviders());
    server.registerProvider(systemProvider);
    JpaCapabilityStatementProvider capabilities =
        new JpaCapabilityStatementProvider(
            server, systemDao, storageSettings, searchParamRegistry, validationSupport);
    capabilities.setImplementationDescription("HAPI FHIR (portal interop tests)");
    server.setServerConformanceProvider(capabilities);
    server.setPagingProvider(paging);
    server.setDefaultPrettyPrint(false);
    server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
    return server;
  }

  @Bean
  public TopicSeeder topicSeeder(
      FhirContext fhirContext,
      IFhirSystemDao<org.hl7.fhir.r4.model.Bundle, ?> systemDao,
      ca.uhn.fhir.jpa.topic.ISubscriptionTopicLoader loader,
      ca.uhn.fhir.jpa.topic.SubscriptionTopicRegistry registry) {
    return new TopicSeeder(fhirContext, systemDao, loader, registry);
  }

  @Bean
  public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
    ServletRegistrationBean<RestfulServer> registration =
        new ServletRegistrationBean<>(server, "/fhir/*");
    registration.setLoadOnStartup(1);
    return registration;
  }
}
